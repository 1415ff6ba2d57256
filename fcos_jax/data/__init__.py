"""The input, without JAX: COCO annotations, sources (a folder or TFDS), decoding, TensorFlow transforms, the
stoppable iterator and the tf.data assembly, the dataset check and the synthetic shapes dataset."""
