"""Loaders behind the built-in dataset plugins (``tlbench.builtin.datasets``).

``common`` holds what every loader shares (decode-once cache, image decoding with corrupt-file
handling, fingerprints, cards); ``local`` reads files already on this machine (scikit-learn
digits, Fashion-MNIST IDX files, image folders, CSV manifests); ``torchvision_sets`` adapts
torchvision's classification datasets with their official splits; ``hf`` reads Hugging Face
``datasets`` tables and ``wds`` WebDataset tar shards, both lazily, importing their library only
when a cell needs the data.
"""
