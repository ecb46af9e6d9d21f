// Schemas of the fastmtl ops and the Python module stub that loads them.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fastmtl._C` runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastmtl, m) {
  m.def("gram(Tensor J) -> Tensor");
  m.def("combine_rows(Tensor w, Tensor J) -> Tensor");
  m.def("combine_rows_out(Tensor w, Tensor J, Tensor(a!) out, bool accumulate=False) -> ()");
  m.def(
      "pcgrad_coefficients(Tensor G, Tensor order, bool include_self=True, float eps=0.0, "
      "bool eps_on_norm=False) -> Tensor");
  m.def("min_norm_weights(Tensor G, int max_iter, float tol) -> (Tensor, Tensor)");
  m.def(
      "cagrad_weights(Tensor G, float c, int rescale, int max_outer, int max_inner) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("symmetric_eigh(Tensor G) -> (Tensor, Tensor)");
  m.def("imtlg_weights(Tensor G) -> (Tensor, Tensor)");
  m.def("aligned_mtl_weights(Tensor G, int scale_mode, float rank_eps) -> (Tensor, Tensor)");
  m.def("config_weights(Tensor G) -> (Tensor, Tensor)");
  m.def(
      "gradvac_coefficients(Tensor G, Tensor order, Tensor(a!) rho, float beta, float eps) "
      "-> Tensor");
  m.def("nash_weights(Tensor G, int max_iter, float tol) -> (Tensor, Tensor, Tensor)");
  m.def(
      "dual_cone_weights(Tensor G, Tensor U, float norm_eps, float reg_eps, int max_iter) "
      "-> (Tensor, Tensor)");
  m.def("feature_disentanglement(Tensor grads, float temperature, int reduce) -> Tensor");
  m.def(
      "graddrop(Tensor J, Tensor leak, Tensor seed, Tensor? purity=None, int stream=0) "
      "-> Tensor");
  m.def(
      "graddrop_out(Tensor J, Tensor leak, Tensor seed, Tensor? purity, int stream, "
      "Tensor(a!) out, bool accumulate=False) -> ()");
  m.def(
      "gram_combine(Tensor J, str solver, Tensor[] tensors, float[] floats, int[] ints, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}
