"""Face models as served engines: an InsightFace model-zoo folder's detector and recognizer (``easel up --faces``)."""
