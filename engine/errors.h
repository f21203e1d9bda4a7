// The engine's exception types.
//
//  FormatError  a .rq file is malformed or inconsistent; the message names the tensor or metadata field.
//               Python: robuq.FormatError (a ValueError).
//  IoError      the file could not be opened or read; carries errno and the path.
//               Python: OSError of the matching subclass (FileNotFoundError for ENOENT, ...).
//  NonFiniteError  a computation produced NaN or infinity (a model whose values overflow float32); the
//               message names where. Python: robuq.NonFiniteError (an ArithmeticError).
// Invalid arguments to the engine's API (shapes, class ids, layer names) throw std::invalid_argument.
#pragma once
#include <stdexcept>
#include <string>

namespace robuq {

class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class NonFiniteError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class IoError : public std::runtime_error {
 public:
  IoError(int err, std::string path, const std::string& what)
      : std::runtime_error(what), err_(err), path_(std::move(path)) {}
  int error_number() const { return err_; }
  const std::string& path() const { return path_; }

 private:
  int err_;
  std::string path_;
};

}  // namespace robuq
