// UvHandle<T>: the single owner of a libuv handle. The handle's memory lives until its
// close callback has run, as libuv requires, even when the owner is gone by then.
#pragma once

#include <uv.h>

#include <utility>

namespace homeward {

template <typename T>
class UvHandle {
 public:
  UvHandle() : handle_(new T{}) {}
  UvHandle(UvHandle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  UvHandle& operator=(UvHandle&& other) noexcept {
    if (this != &other) {
      Close();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;
  ~UvHandle() { Close(); }

  T* get() const { return handle_; }
  uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(handle_); }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(handle_); }

  // Closes the handle; its memory is freed by the close callback. A handle that was
  // never initialised (type unknown) is freed at once.
  void Close() {
    if (!handle_) return;
    T* handle = std::exchange(handle_, nullptr);
    auto* base = reinterpret_cast<uv_handle_t*>(handle);
    if (base->type == UV_UNKNOWN_HANDLE) {
      delete handle;
    } else if (!uv_is_closing(base)) {
      uv_close(base, [](uv_handle_t* h) { delete reinterpret_cast<T*>(h); });
    }
  }

 private:
  T* handle_;
};

}  // namespace homeward
