"""sertk: speech emotion recognition toolkit (library behind the egs/ recipes)."""

__version__ = "0.1.0"
