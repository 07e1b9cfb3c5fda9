# Where the FAU Aibo Emotion Corpus lives: the folder holding the chunk wavs
# (e.g. wav/Ohm_01_001_00.wav) and labels/IS2009EmotionChallenge/
# chunk_labels_{2cl,5cl}_corpus.txt. Obtain it from the Pattern Recognition Lab,
# FAU Erlangen-Nuernberg (licence agreement; research use). An environment
# variable of the same name overrides this file.
FAU_AIBO=${FAU_AIBO:-}
