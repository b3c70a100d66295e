# bash completion for Homeward's commands: mosrun, mosmigrate, mosps, mosmon, mosctl.
# Installed once per command name; node names come from `mosmon --json` (the nodes this
# node's gossip knows), home pids from `mosps --json`.

_homeward_nodes() {
  mosmon --json 2>/dev/null | python3 -c '
import json, sys
try:
    print(" ".join(n["name"] for n in json.load(sys.stdin).get("nodes", [])))
except ValueError:
    pass' 2>/dev/null
}

_homeward_pids() {
  mosps --json 2>/dev/null | python3 -c '
import json, sys
try:
    print(" ".join(str(j["pid"]) for j in json.load(sys.stdin).get("jobs", [])))
except ValueError:
    pass' 2>/dev/null
}

_homeward_mosrun() {
  local cur prev
  _init_completion || return
  # After the program, complete its own arguments as bash would.
  local i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      -r | -m | -C | -A | -N | -S | -R) ((i++)) ;;
      -*) ;;
      *)
        _command_offset "$i"
        return
        ;;
    esac
  done
  case $prev in
    -r) COMPREPLY=($(compgen -W "$(_homeward_nodes)" -- "$cur")); return ;;
    -C | -R) _filedir -d; return ;;
    -S) COMPREPLY=($(compgen -W "$(compgen -A signal | sed 's/^SIG//')" -- "$cur")); return ;;
    -m | -A | -N) return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "-h -r -b -m -L -l -G -C -A -N -S -R --help" -- "$cur"))
  else
    COMPREPLY=($(compgen -c -- "$cur"))
  fi
}

_homeward_mosmigrate() {
  local cur prev
  _init_completion || return
  case $prev in
    --control) _filedir; return ;;
    --busy-wait) return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "-h --help --node --no-wait --busy-wait --control" -- "$cur"))
    return
  fi
  local args=() i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      --control | --busy-wait) ((i++)) ;;
      -*) ;;
      *) args+=("${words[i]}") ;;
    esac
  done
  case ${#args[@]} in
    0) COMPREPLY=($(compgen -W "$(_homeward_pids)" -- "$cur")) ;;
    1) COMPREPLY=($(compgen -W "$(_homeward_nodes) home freeze continue checkpoint" -- "$cur")) ;;
    2) [[ ${args[1]} == checkpoint ]] && _filedir -d ;;
  esac
}

_homeward_mosps() {
  local cur prev
  _init_completion || return
  [[ $prev == --control ]] && { _filedir; return; }
  COMPREPLY=($(compgen -W "-h --help --json --control" -- "$cur"))
}

_homeward_mosmon() {
  local cur prev
  _init_completion || return
  case $prev in
    --control) _filedir; return ;;
    --refresh-ms) return ;;
  esac
  COMPREPLY=($(compgen -W "-h --help --json --refresh-ms --control" -- "$cur"))
}

_homeward_mosctl() {
  local cur prev
  _init_completion || return
  case $prev in
    --control | -c | --config) _filedir; return ;;
  esac
  local command= i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      --control) ((i++)) ;;
      -*) ;;
      *) command=${words[i]}; break ;;
    esac
  done
  case $command in
    "")
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "-h --help --control" -- "$cur"))
      else
        COMPREPLY=($(compgen -W "status check home-mount home-unmount block unblock expel bring leave join reload" -- "$cur"))
      fi
      ;;
    check) COMPREPLY=($(compgen -W "-h --help -c --config" -- "$cur")) ;;
    home-mount | home-unmount)
      ((cword == i + 1)) && COMPREPLY=($(compgen -W "$(_homeward_nodes)" -- "$cur"))
      ;;
    *) COMPREPLY=($(compgen -W "-h --help" -- "$cur")) ;;
  esac
}

complete -F _homeward_mosrun mosrun
complete -F _homeward_mosmigrate mosmigrate
complete -F _homeward_mosps mosps
complete -F _homeward_mosmon mosmon
complete -F _homeward_mosctl mosctl
