# Where __NAME__ lives: the folder that conf/import.yaml's paths are relative to.
# An environment variable of the same name overrides this file.
__VAR__=${__VAR__:-}
