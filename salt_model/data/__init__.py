"""Data in and out: the TGS tiles and their checks, the generated data, folds, augmentation, RLE,
SEG-Y volumes and the probability cube on disk."""
