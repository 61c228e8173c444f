"""Predictions with a job's refined ensemble: new images assigned exactly as the job assigned its own.

``inputs`` (no torch: the API checks uploads with it) holds the rules a prediction's images must
meet and the reading limits they imply; ``predictor`` loads ``refined_ensemble.safetensors`` and
assigns images with the job's own inference path; ``onnx_export`` writes the same ensemble as
``model.onnx``. This file imports nothing, so importing ``core.predict.inputs`` loads no torch.
"""
