"""Serving: the in-process sampling server over the step scheduler (:mod:`.server`), and a Triton Inference Server
model repository generated from a bundle (:mod:`.triton`)."""
