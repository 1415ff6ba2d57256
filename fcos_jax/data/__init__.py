"""Input pipeline: COCO/TFDS sources, TensorFlow transforms, tf.data assembly and a synthetic dataset."""
