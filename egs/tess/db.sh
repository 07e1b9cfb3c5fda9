# Where TESS lives: the folder holding OAF_angry ... YAF_sad (any case; an extra
# top folder, as in some copies, is fine). Obtain it from
# https://doi.org/10.5683/SP2/E8H2MF (University of Toronto Dataverse);
# licence CC BY-NC-ND 4.0. An environment variable of the same name overrides this file.
TESS=${TESS:-}
