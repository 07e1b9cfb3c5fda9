"""Stage entry points: ``python -m sertk.bin.<name>`` or ``sertk <name>``."""
