# Where CREMA-D lives: the folder holding AudioWAV/, VideoDemographics.csv and
# processedResults/summaryTable.csv (a clone of the CREMA-D repository with its
# git-lfs audio). Obtain it from https://github.com/CheyneyComputerScience/CREMA-D
# (or the GitLab mirror); licence ODbL 1.0 + DbCL 1.0. An environment variable of
# the same name overrides this file.
CREMAD=${CREMAD:-}
