"""Everything of the classifier that needs torch: the exporter (``export.py``, run by a replica
in a subprocess), ``prepare_models.py``, the torch runtime (``IMGQ_RUNTIME=torch``) and the
networks it builds (EfficientNet-Lite, torchvision's).  The serving process never imports this
package under ONNX Runtime; nothing outside it imports it except the loader's torch branch
(``models.py``) and the two commands' entry points."""
