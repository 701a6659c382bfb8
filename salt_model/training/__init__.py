"""Training one fold: the fold loop, losses, LR schedules, evaluation cadence, ensemble members,
checkpoints, the honest choice among ensemble variants, pseudo-labels."""
