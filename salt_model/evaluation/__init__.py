"""From probabilities to scores, masks and pictures: the competition metric, thresholds chosen on
OOF, inference on tiles and whole sections, error analysis, the report's pictures and charts."""
