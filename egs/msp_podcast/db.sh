# Where MSP-Podcast lives: the release folder holding Audios/ and Labels/
# (labels_consensus.csv). Obtain it from the MSP Lab, UT Dallas, after signing
# the academic licence agreement:
# https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html
# An environment variable of the same name overrides this file.
MSP_PODCAST=${MSP_PODCAST:-}
