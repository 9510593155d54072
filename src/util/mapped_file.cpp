#include "util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/check.h"

namespace hybridgen {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes the descriptor on every path out of open().
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  FdGuard fd;
  do {
    fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd.fd < 0 && errno == EINTR);
  if (fd.fd < 0) {
    const int err = errno;
    fail("cannot open " + path + ": " + errno_text(err));
  }

  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) {
    const int err = errno;
    fail("cannot stat " + path + ": " + errno_text(err));
  }
  if (S_ISDIR(st.st_mode)) fail("cannot map " + path + ": it is a directory, not a file");
  if (!S_ISREG(st.st_mode)) fail("cannot map " + path + ": not a regular file");
  if (st.st_size < 0) fail("cannot map " + path + ": negative file size");

  std::shared_ptr<MappedFile> file(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  // mmap of zero bytes fails with EINVAL; an empty file is mapped as (nullptr, 0) and the
  // readers report it as an empty file.
  if (file->size_ == 0) return file;
  if (file->size_ > static_cast<uint64_t>(SIZE_MAX)) {
    fail("cannot map " + path + ": file too large for the address space");
  }

  void* p = ::mmap(nullptr, static_cast<size_t>(file->size_), PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    fail("cannot mmap " + path + " (" + std::to_string(file->size_) +
         " bytes): " + errno_text(err));
  }
  // Checkpoints are read front to back once while loading; ask for read-ahead. Failure here is
  // only a missed hint.
  (void)::madvise(p, static_cast<size_t>(file->size_), MADV_WILLNEED);
  file->data_ = static_cast<const uint8_t*>(p);
  return file;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) {
    ::munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
  }
}

}  // namespace hybridgen
