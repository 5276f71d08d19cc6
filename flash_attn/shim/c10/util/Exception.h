// Torch-free stand-in for <c10/util/Exception.h>, the one torch header FA3's hopper/static_switch.h
// includes (for TORCH_CHECK in VARLEN_SWITCH). Ours throws std::runtime_error with the message; the
// C-ABI wrapper (flash_attn/fa3_capi.cu) catches it and returns an error code, so nothing escapes
// through the C boundary. Written for mini-vLLM; no torch code is copied.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mv_shim {
template <typename... Args>
inline std::string check_message(const char* cond, const Args&... args) {
  std::ostringstream os;
  os << "check failed: " << cond;
  if constexpr (sizeof...(args) > 0) {
    os << ": ";
    (os << ... << args);
  }
  return os.str();
}
}  // namespace mv_shim

#define TORCH_CHECK(cond, ...)                                                      \
  do {                                                                              \
    if (!(cond)) throw std::runtime_error(mv_shim::check_message(#cond, ##__VA_ARGS__)); \
  } while (0)
