# Where IEMOCAP lives: the IEMOCAP_full_release folder (Session1 ... Session5).
# Obtain it from https://sail.usc.edu/iemocap/ after signing the release form;
# licence: USC SAIL IEMOCAP licence agreement (research use, no redistribution).
# An environment variable of the same name overrides this file.
IEMOCAP=${IEMOCAP:-}
