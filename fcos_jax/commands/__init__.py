"""The six console scripts (fcos-train, fcos-evaluate, fcos-predict, fcos-export, fcos-convert, fcos-check-data), each
a module with `main(argv=None)` on one harness (`harness.py`). Nothing in the package imports them."""
