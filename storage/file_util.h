// Small POSIX file helpers for storage/: read-only mmap, durable sequential writes, atomic
// replace. Errors carry the path and errno text.
#ifndef MOEC_STORAGE_FILE_UTIL_H_
#define MOEC_STORAGE_FILE_UTIL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moec::storage {

// A whole file mapped read-only. Immutable after Open; thread-safe.
class MappedFile {
 public:
  // Errors: NotFound (missing), PermissionDenied, FailedPrecondition (not a regular file),
  // Internal (mmap failure).
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  MappedFile(std::string path, const uint8_t* data, uint64_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  const std::string path_;
  const uint8_t* const data_;  // nullptr for an empty file
  const uint64_t size_;
};

// A file written sequentially through a file descriptor. Used from one thread only.
class WritableFile {
 public:
  // Creates (truncating) `path` with mode 0644.
  static absl::StatusOr<std::unique_ptr<WritableFile>> Create(const std::string& path);
  ~WritableFile();  // closes without sync if Close was not called
  WritableFile(const WritableFile&) = delete;
  WritableFile& operator=(const WritableFile&) = delete;

  // Appends bytes; appends under 1 MiB are buffered, larger ones go straight to the kernel.
  absl::Status Append(absl::string_view bytes);
  absl::Status Sync();   // flushes the buffer, then fdatasync
  absl::Status Close();  // flushes the buffer and closes; idempotent
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  WritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  absl::Status WriteRaw(const char* p, size_t n);
  absl::Status FlushBuffer();

  static constexpr size_t kBufferBytes = 1 << 20;  // small appends are coalesced up to this
  const std::string path_;
  int fd_;
  uint64_t size_ = 0;
  std::string buffer_;
};

// Fsyncs a directory so that renames and creations inside it are durable.
absl::Status SyncDir(const std::string& dir);

// Renames `from` to `to` (atomic on POSIX) and fsyncs the parent directory of `to`.
absl::Status RenameDurably(const std::string& from, const std::string& to);

// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync dir.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

// Reads a whole file, refusing files larger than `max_bytes` (ResourceExhausted).
absl::StatusOr<std::string> ReadFileToString(const std::string& path, uint64_t max_bytes);

// Drops the pages of a read-only file mapping that lie wholly inside [data, data + size) from
// this process's resident set (madvise MADV_DONTNEED); the data stays valid and is faulted in
// again from the page cache on the next access. Used by the layer-streaming forward so that a
// layer's mapped weights stop counting against RSS once they were converted. Best effort: a
// failing madvise is ignored (it only affects memory accounting).
void ReleaseMappedPages(const void* data, uint64_t size);

// A unique temporary name beside `path` ("<path>.tmp.<pid>.<n>").
std::string TempPathFor(const std::string& path);

// Maps an errno value to a Status with "<what> <path>: <strerror>".
absl::Status ErrnoToStatus(int err, absl::string_view what, absl::string_view path);

}  // namespace moec::storage

#endif  // MOEC_STORAGE_FILE_UTIL_H_
