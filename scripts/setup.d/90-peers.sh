# .venv-peers: the loaders bench/compare.py --peers races millrace against (bench/peers/), made
# under `scripts/setup --peers` only. MXNet runs from .venv-mxnet (20-mxnet.sh): its numpy 1.23
# cannot sit beside tensorflow's.
[[ $peers == 1 ]] || return 0

# FFCV's build asks pkg-config for opencv4 and includes <opencv2/opencv.hpp>, which includes
# every module Debian's OpenCV was built with; millrace installs only the core, imgproc and
# imgcodecs headers (all that FFCV's C++ uses). This describes those three, with an opencv.hpp
# that includes only them, found first.
peers_pkgconfig=$PWD/.venv-peers-pkgconfig
mkdir -p "$peers_pkgconfig/include/opencv2"
cat > "$peers_pkgconfig/opencv4.pc" <<PC
Name: opencv4
Description: Debian's OpenCV 4 core, imgproc and imgcodecs
Version: 4.6.0
Cflags: -I$peers_pkgconfig/include -I/usr/include/opencv4
Libs: -lopencv_imgcodecs -lopencv_imgproc -lopencv_core
PC
cat > "$peers_pkgconfig/include/opencv2/opencv.hpp" <<'HPP'
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
HPP
PKG_CONFIG_PATH=$peers_pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH} \
  make_venv .venv-peers scripts/requirements/peers.txt
