"""fcos_jax: FCOS (Tian et al., ICCV 2019) as a JAX/Flax functional detector, faithful to PaddleDetection."""

__version__ = '0.1.0'
