# Where RAVDESS lives: the folder holding Actor_01 ... Actor_24 (speech audio).
# Obtain it from https://zenodo.org/record/1188976 (Audio_Speech_Actors_01-24.zip,
# or the Actor_*.zip files); licence CC BY-NC-SA 4.0. An environment variable of
# the same name overrides this file.
RAVDESS=${RAVDESS:-}
