// Helpers shared by the binding files: strict numpy inputs and fresh numpy outputs.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace robuq_bind {

namespace py = pybind11;

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Accepts anything numpy can view as an array (numpy arrays, CPU torch tensors), requires exactly the
// dtype T and `ndim` dimensions (std::invalid_argument -> ValueError otherwise) and returns a
// C-contiguous array (a copy only when the input is not contiguous).
template <class T>
CArray<T> input_array(const py::object& obj, const char* name, const char* dtype_name, int ndim,
                      const char* shape_doc) {
  py::array a = py::array::ensure(obj);
  if (!a)
    throw std::invalid_argument(std::string(name) + " must be a numpy array of dtype " + dtype_name + ", got " +
                                std::string(py::str(py::type::of(obj))));
  if (!py::isinstance<py::array_t<T>>(a))
    throw std::invalid_argument(std::string(name) + " must have dtype " + dtype_name + ", got " +
                                std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D " + shape_doc + ", got " +
                                std::to_string(a.ndim()) + "-D");
  return CArray<T>::ensure(a);
}

// A shape entry for numpy (py::ssize_t) from an int64 size.
inline py::ssize_t ss(int64_t v) { return static_cast<py::ssize_t>(v); }

template <class T>
py::array_t<T> new_array(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

}  // namespace robuq_bind
