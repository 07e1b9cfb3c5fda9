"""Utterance-level features: eGeMAPS functionals (openSMILE) in a kaldiio store, acoustic concept tokens."""
