# Where EmoDB lives: the unpacked download.zip, i.e. the folder holding wav/
# (wav/03a01Fa.wav ...). Obtain it from http://emodb.bilderbar.info/download/
# (or with audb: audb.load('emodb')); licence CC0 1.0 (audEERING's publication).
# An environment variable of the same name overrides this file.
EMODB=${EMODB:-}
