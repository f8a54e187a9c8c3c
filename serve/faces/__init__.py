"""Faces: a detector and a recognizer served as engines (``easel up --faces DIR``), and what they find in an image."""
