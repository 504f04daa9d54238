"""What `export` writes, named once for the export itself and for the command line (which imports no
PyTorch, so that `--help` answers at once): each format's model file, the format groups, the opset."""

MODEL_FILES = {"torchscript": "model_torchscript.pt", "export": "model_exported.pt2",
               "onnx": "model.onnx", "safetensors": "model.safetensors"}
FORMAT_GROUPS = {"both": ["torchscript", "export"], "all": list(MODEL_FILES)}
FORMAT_CHOICES = (*MODEL_FILES, *FORMAT_GROUPS)
# Opset 20 has a Gelu operator, which the exporter then uses for the network's GELU: OpenCV's DNN
# module (cv2.dnn.readNetFromONNX, 5.1) dies with a segmentation fault on opset 18's spelling of it
# (Div, Erf, Add, Mul, Mul) and loads this one. onnxruntime runs opset 20 from 1.17 (2024) on.
OPSET = 20
