// The web monitor's page (noded/web/page/), built into the daemon by embed_assets.py so
// that it needs nothing from outside (no internet, no files to install).
#pragma once

#include <span>
#include <string_view>

namespace homeward {

struct WebAsset {
  const char* name;       // "index.html"
  const char* type;       // its Content-Type
  std::string_view body;
};

std::span<const WebAsset> WebAssets();

}  // namespace homeward
