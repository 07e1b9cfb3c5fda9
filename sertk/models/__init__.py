"""Models: speech encoders, pooling and heads, SELM, ICL speech-LM, students, ALMs."""
