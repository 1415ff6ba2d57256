"""Building blocks shared by the backbone, FPN, head and DCN: symmetric-padding convolution and frozen batch norm.

Frozen weights live in the 'frozen' collection instead of 'params': the optimiser only ever sees 'params', so a
frozen weight cannot change, whatever the optimiser does.
"""

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

FROZEN = 'frozen'


def weight(module, frozen, name, init, shape):
  """A float32 weight of `module`: a trained parameter, or a variable in the 'frozen' collection."""
  if frozen:
    return module.variable(FROZEN, name, lambda: init(module.make_rng('params'), shape, jnp.float32)).value
  return module.param(name, init, shape, jnp.float32)


class Conv2d(nn.Module):
  """k x k convolution, NHWC/HWIO, padded (k - 1) // 2 on every side (Paddle/PyTorch semantics, unlike 'SAME')."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  use_bias: bool = False
  frozen: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.kaiming_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    """x [N, H, W, Cin] -> [N, ceil(H / stride), ceil(W / stride), features] for odd kernels."""
    k = self.kernel_size
    kernel = weight(self, self.frozen, 'kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if k == 1:  # A matmul over channels: its weight gradient is a plain GEMM (XLA:CPU's conv one is ~3x slower).
      y = jnp.einsum('nhwc,cf->nhwf', x[:, ::self.stride, ::self.stride], kernel[0, 0])
    else:
      pad = (k - 1) // 2
      y = lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + weight(self, self.frozen, 'bias', self.bias_init, (self.features,)).astype(self.dtype)
    return y


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine (scale, bias, mean, var in 'frozen'), eps 1e-5."""
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.variable(FROZEN, 'scale', jnp.ones, (c,), jnp.float32).value
    bias = self.variable(FROZEN, 'bias', jnp.zeros, (c,), jnp.float32).value
    mean = self.variable(FROZEN, 'mean', jnp.zeros, (c,), jnp.float32).value
    var = self.variable(FROZEN, 'var', jnp.ones, (c,), jnp.float32).value
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    return x * multiplier.astype(self.dtype) + (bias - mean * multiplier).astype(self.dtype)
