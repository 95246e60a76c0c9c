"""The torch-free core everything else stands on: files and hashes, precisions, the typed manifest, sampling
settings and requests, schedules, the samplers written once over an array adapter, and the sampling loop.

Nothing under ``medexport.core`` imports torch (the import contract in ``.importlinter`` checks it): a bundle
runs from here with numpy and onnxruntime alone (:mod:`medexport.lite`).
"""
