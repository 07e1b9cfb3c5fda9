"""Late fusion of class posteriors from several models (ZS-Fuse, stage 9)."""
