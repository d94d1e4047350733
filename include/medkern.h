/* medkern C ABI: link with -lmedkern (libmedkern.so, built by `cargo build --release`).
 *
 * Conventions (the same for every function):
 * - Functions that can fail return mk_status (MK_OK = 0); mk_last_error() is the message of
 *   the calling thread's last failure: it names the op, what was given and what was expected.
 *   It stays valid until the thread's next failing call.
 * - Objects are opaque handles made by mk_*_open / mk_*_load and released by mk_*_free
 *   (NULL is accepted). A handle is used by one thread at a time; distinct handles may be used
 *   from different threads at once. Models keep their own reference to their device.
 * - Outputs go to caller-owned buffers whose length in elements is passed alongside; a buffer
 *   that is too small gives MK_ERR_BUFFER_TOO_SMALL and nothing is written.
 * - No panic crosses the boundary: a bug in medkern gives MK_ERR_INTERNAL.
 * The Rust side is src/capi.rs; tests/capi.rs and tests/c/capi_smoke.c exercise every function.
 */
#ifndef MEDKERN_H
#define MEDKERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Compare with mk_abi_version() at start-up. */
#define MEDKERN_ABI_VERSION 3u /* 2: MK_ERR_CORRUPT_INPUT; 3: max_batch in
                                  mk_image_model_set_input_limits */

typedef enum mk_status {
    MK_OK = 0,
    MK_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad string, unknown name, value out of range */
    MK_ERR_SHAPE = 2,            /* an input of the wrong shape */
    MK_ERR_DTYPE = 3,            /* an operand of the wrong dtype */
    MK_ERR_DEVICE = 4,           /* no driver, no such GPU, GPU too old, wrong device */
    MK_ERR_CUDA = 5,             /* a CUDA driver call failed */
    MK_ERR_IO = 6,               /* a file missing or unreadable */
    MK_ERR_BUFFER_TOO_SMALL = 7, /* the caller's output buffer is too small */
    MK_ERR_INTERNAL = 8,         /* a bug in medkern (caught panic, NVRTC failure) */
    MK_ERR_CORRUPT_INPUT = 9     /* a file read but unusable: corrupt or non-finite weights,
                                    tensors not matching the model, a malformed, truncated or
                                    over-limit image/DICOM, not a regular file; or a
                                    non-finite result */
} mk_status;

typedef enum mk_dtype {
    MK_DTYPE_DEFAULT = 0, /* f16 on a GPU, f32 on the CPU */
    MK_DTYPE_F32 = 1,
    MK_DTYPE_F16 = 2,
    MK_DTYPE_BF16 = 3
} mk_dtype;

typedef enum mk_pooling {
    MK_POOLING_DEFAULT = -1, /* the folder's: a sentence-transformers folder's Pooling mode
                                (modules.json), else mean; rows are unit length when the
                                folder has a Normalize module or normalize != 0 */
    MK_POOLING_MEAN = 0,     /* mean over tokens (sentence-transformers) */
    MK_POOLING_CLS = 1,      /* the [CLS] token */
    MK_POOLING_MAX = 2       /* max over tokens, per feature */
} mk_pooling;

typedef struct mk_device mk_device;
typedef struct mk_bert mk_bert;
typedef struct mk_image_model mk_image_model;
typedef struct mk_exam mk_exam;

/* One patient's EXAM prediction. */
typedef struct mk_exam_output {
    float oxygen_24h;       /* P(more than low-flow oxygen) at 24 h */
    float oxygen_72h;       /* ... at 72 h */
    float ordinal_score;    /* the ordinal score before the cut points */
    float ordinal_probs[5]; /* P(class k), k = 0..4: room_air, low_flow, high_flow_or_niv,
                               mechanical_ventilation, death (mk_exam_class_name(k)) */
    uint32_t ordinal_class; /* the most probable class, 0-4 */
} mk_exam_output;

/* Library */
uint32_t mk_abi_version(void);
const char *mk_version(void);    /* static string */
/* The message of this thread's last failure, "" when its last call succeeded. A failure's
 * message stays valid until this thread's next failing call (successes do not free it). */
const char *mk_last_error(void);
/* The largest model file (weights, config.json, tokenizer.json) the mk_*_load functions read,
 * for the whole process; 0 restores the default (2 GiB). A larger file is
 * MK_ERR_CORRUPT_INPUT before it is read. */
void mk_set_max_model_file_bytes(uint64_t bytes);

/* Devices. spec: "auto" or NULL (first working GPU, else CPU), "cpu", "gpu", "gpu:N",
 * "cuda", "cuda:N", or "emu" (the emulated GPU: the GPU path with the kernels run on the CPU
 * under memory checks; for testing; mk_device_is_gpu says 1). */
mk_status mk_device_open(const char *spec, mk_device **out);
int mk_device_is_gpu(const mk_device *dev);
/* Writes a description with its NUL into buf[cap]; *needed (if not NULL) gets the size. For
 * "auto" on the CPU it says why the GPU was not used: "cpu (auto: the GPU did not start: ...)". */
mk_status mk_device_describe(const mk_device *dev, char *buf, size_t cap, size_t *needed);
void mk_device_free(mk_device *dev);

/* BERT / DistilBERT / ALBERT encoders from a Hugging Face folder (config.json,
 * model.safetensors, tokenizer.json for text input). max_len: tokens kept per text, [CLS] and
 * [SEP] included; 0: a sentence-transformers folder's max_seq_length, else the model's
 * max_position_embeddings; more than max_position_embeddings is MK_ERR_INVALID_ARGUMENT. A
 * config.json the model cannot use is MK_ERR_CORRUPT_INPUT, as is a modules.json with modules
 * or pooling modes medkern does not run (Dense, mean_sqrt_len, several modes at once).
 * A library built without the `tokenizers` Cargo feature reads no tokenizer.json: its
 * mk_bert_embed and mk_bert_classify are MK_ERR_INVALID_ARGUMENT saying so (the *_ids
 * functions work). */
mk_status mk_bert_load(const mk_device *dev, const char *dir, mk_dtype dtype, size_t max_len,
                       mk_bert **out);
/* Limits of m's calls, checked before any text or id is read: the most texts or id sequences
 * in one call (max_batch, default 4096; more is MK_ERR_INVALID_ARGUMENT naming max_batch and
 * the count) and the bytes of one text searched for max_len tokens (max_text_bytes, default
 * 1 MiB). 0 keeps a limit's default. */
mk_status mk_bert_set_input_limits(mk_bert *m, size_t max_batch, size_t max_text_bytes);
size_t mk_bert_dim(const mk_bert *m);        /* embedding width */
size_t mk_bert_num_labels(const mk_bert *m); /* 0 without a classification head */
mk_status mk_bert_label(const mk_bert *m, size_t i, char *buf, size_t cap, size_t *needed);
/* out[n * dim], row-major; normalize != 0 gives unit L2 rows. A text over max_text_bytes
 * (1 MiB) whose first max_text_bytes have no word break (nothing to truncate at) is
 * MK_ERR_INVALID_ARGUMENT, as is n over max_batch (mk_bert_set_input_limits). */
mk_status mk_bert_embed(const mk_bert *m, const char *const *texts, size_t n, mk_pooling pooling,
                        int normalize, float *out, size_t out_len);
/* Pre-tokenised input: sequence i is ids[sum(lens[0..i]) ..][0..lens[i]], with [CLS]/[SEP];
 * lens[i] at most the model's max_position_embeddings. */
mk_status mk_bert_embed_ids(const mk_bert *m, const uint32_t *ids, const size_t *lens, size_t n,
                            mk_pooling pooling, int normalize, float *out, size_t out_len);
/* out[n * num_labels] logits. */
mk_status mk_bert_classify(const mk_bert *m, const char *const *texts, size_t n, float *out,
                           size_t out_len);
mk_status mk_bert_classify_ids(const mk_bert *m, const uint32_t *ids, const size_t *lens, size_t n,
                               float *out, size_t out_len);
void mk_bert_free(mk_bert *m);

/* Image classifiers. kind: "lite0" (EfficientNet-Lite0, 1000 ImageNet logits), "cxr"
 * (EfficientNet-B7 chest X-ray triage, 1 abnormal logit), "sepsis" (ResNet-18-based, 2 logits:
 * no sepsis, sepsis). weights: a safetensors file, or NULL for seeded random weights (smoke
 * tests only). Images are centre-cropped to a square, resized and normalised (ImageNet). */
mk_status mk_image_model_load(const mk_device *dev, const char *kind, const char *weights,
                              mk_dtype dtype, mk_image_model **out);
size_t mk_image_model_num_outputs(const mk_image_model *m);
/* PNG, JPEG or uncompressed DICOM, chosen by content; out[num_outputs]. A library built
 * without the `image` (PNG/JPEG) or `dicom` Cargo feature gives MK_ERR_INVALID_ARGUMENT for
 * those files. */
mk_status mk_image_classify_file(const mk_image_model *m, const char *path, float *out,
                                 size_t out_len);
/* n decoded 8-bit images pixels[n][h][w][channels] (1 grey or 3 RGB); out[n * num_outputs].
 * n over max_batch (mk_image_model_set_input_limits) is MK_ERR_INVALID_ARGUMENT. */
mk_status mk_image_classify_u8(const mk_image_model *m, const uint8_t *pixels, size_t n, size_t h,
                               size_t w, size_t channels, float *out, size_t out_len);
/* Limits of the files mk_image_classify_file reads (checked before allocating): the file's
 * bytes, a PNG/JPEG's pixels (width x height) and decoder allocation, DICOM sequence nesting;
 * and max_batch, the most images one mk_image_classify_u8 takes. 0 keeps a limit's default
 * (1 GiB, 64 Mpixel, 256 MiB, 64, 4096). A file over a limit gives MK_ERR_CORRUPT_INPUT naming
 * the limit; a batch over max_batch MK_ERR_INVALID_ARGUMENT naming it. */
mk_status mk_image_model_set_input_limits(mk_image_model *m, uint64_t max_file_bytes,
                                          uint64_t max_pixels, uint64_t max_alloc_bytes,
                                          size_t max_dicom_depth, size_t max_batch);
void mk_image_model_free(mk_image_model *m);

/* EXAM: chest X-ray + EMR -> oxygen requirement. weights NULL: seeded random (smoke tests). */
mk_status mk_exam_load(const mk_device *dev, const char *weights, mk_dtype dtype, mk_exam **out);
/* emr_json: a JSON object with the documented EMR keys (README); missing keys are flagged absent. */
mk_status mk_exam_predict(const mk_exam *m, const char *image_path, const char *emr_json,
                          mk_exam_output *out);
/* As mk_image_model_set_input_limits, for the image files of mk_exam_predict (one patient a
 * call: no max_batch). */
mk_status mk_exam_set_input_limits(mk_exam *m, uint64_t max_file_bytes, uint64_t max_pixels,
                                   uint64_t max_alloc_bytes, size_t max_dicom_depth);
void mk_exam_free(mk_exam *m);
/* The name of ordinal class k of mk_exam_output (static string: "room_air", "low_flow",
 * "high_flow_or_niv", "mechanical_ventilation", "death"); NULL for k >= 5. Use it rather
 * than hard-coding the order. */
const char *mk_exam_class_name(size_t k);

#ifdef __cplusplus
}
#endif
#endif /* MEDKERN_H */
