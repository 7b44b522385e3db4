"""The synthetic cue benchmark world: planted-cue datasets, ground-truth models, real photos, the demo."""
