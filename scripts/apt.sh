# Sourced by the scripts that install what they need from Debian's packages.
#
#   apt_install PACKAGE...    install the packages (as root, or through sudo), quietly

apt_install() {
  echo "Installing $* (Debian packages)..." >&2
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
