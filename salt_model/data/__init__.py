"""Data in and out: the TGS tiles and their checks, the generated data, folds, augmentation, RLE,
SEG-Y volumes and the probability cube on disk."""

SIZE = 101  # a TGS tile is 101 x 101 pixels (the one place this number is stated)
