"""Serving: a Triton Inference Server model repository generated from a bundle (:mod:`.triton`)."""
