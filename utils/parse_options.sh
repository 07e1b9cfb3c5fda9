#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a script after it sets its defaults:
#   . utils/parse_options.sh
# "--foo-bar value" and "--foo_bar value" set the shell variable foo_bar, which
# must already exist (a typo is an error, not a silent new variable).
# Options are declared between "# ---- options ----" and "# ---- end options ----"
# as "name=default  # description"; --help prints each with its current value.

__po_script="${BASH_SOURCE[1]:-$0}"
__po_help=false
__po_positional=()

__po_print_help() {
  [ -n "${help_message:-}" ] && echo -e "$help_message" && echo
  echo "Options (current value):"
  sed -n '/^# ---- options ----/,/^# ---- end options ----/p' "$__po_script" \
    | grep -E '^[a-zA-Z_][a-zA-Z0-9_]*=' | while IFS= read -r line; do
      name=${line%%=*}
      desc=""
      case "$line" in *"# "*) desc=${line#*# } ;; esac
      printf '  --%-22s %-28s %s\n' "${name//_/-}" "\"${!name}\"" "$desc"
    done
}

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) __po_help=true; shift ;;
    --*=*)
      __po_name=${1%%=*}; __po_name=${__po_name#--}; __po_name=${__po_name//-/_}
      __po_value=${1#*=}
      if [ -z "${!__po_name+set}" ]; then echo "$0: invalid option $1" >&2; exit 1; fi
      printf -v "$__po_name" '%s' "$__po_value"; shift ;;
    --*)
      __po_name=${1#--}; __po_name=${__po_name//-/_}
      if [ -z "${!__po_name+set}" ]; then echo "$0: invalid option $1 (no such option; see --help)" >&2; exit 1; fi
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      printf -v "$__po_name" '%s' "$2"; shift 2 ;;
    *) __po_positional+=("$1"); shift ;;
  esac
done

if $__po_help; then __po_print_help; exit 0; fi
set -- "${__po_positional[@]+"${__po_positional[@]}"}"
unset __po_name __po_value __po_help
