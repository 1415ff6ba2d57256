"""FCOS network: ResNet backbone, FPN, head, and the deformable convolution they can use."""
