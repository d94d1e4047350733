/* A C user of libmedkern (include/medkern.h), built and run by tests/capi.rs (also under
 * valgrind, where every handle must be freed, on the early exits too):
 *   capi_smoke <device spec> <MiniLM folder> <EfficientNet-Lite0 weights> <photo> <class ids...>
 * Exits 0 when every check passes, 1 when one fails, printing one line per check. */
#include "medkern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (cond) {                                            \
            printf("ok: " __VA_ARGS__);                        \
        } else {                                               \
            printf("FAIL (%s:%d): ", __FILE__, __LINE__);      \
            printf(__VA_ARGS__);                               \
            failures++;                                        \
        }                                                      \
        printf("\n");                                          \
    } while (0)

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s device minilm_dir lite0_weights photo class...\n", argv[0]);
        return 2;
    }
    CHECK(mk_abi_version() == MEDKERN_ABI_VERSION, "ABI version %u", mk_abi_version());
    CHECK(strlen(mk_version()) > 0, "version %s", mk_version());
    CHECK(mk_exam_class_name(4) && strcmp(mk_exam_class_name(4), "death") == 0 &&
              mk_exam_class_name(5) == NULL,
          "EXAM class 4 is %s", mk_exam_class_name(4));

    mk_device *dev = NULL;
    mk_status st = mk_device_open("tpu:0", &dev);
    CHECK(st == MK_ERR_INVALID_ARGUMENT && dev == NULL && strstr(mk_last_error(), "tpu:0"),
          "bad device spec is an error naming it: %s", mk_last_error());
    st = mk_device_open(argv[1], &dev);
    CHECK(st == MK_OK && dev != NULL, "device %s opened (%s)", argv[1], mk_last_error());
    if (st != MK_OK) return 1;
    CHECK(strlen(mk_last_error()) == 0, "last error cleared by a success");

    /* Model files that are not there: an I/O error naming them, nothing returned. */
    mk_bert *missing = NULL;
    st = mk_bert_load(dev, "/nonexistent/minilm", MK_DTYPE_DEFAULT, 0, &missing);
    CHECK(st == MK_ERR_IO && missing == NULL && strstr(mk_last_error(), "/nonexistent/minilm"),
          "missing model folder: %s", mk_last_error());
    mk_image_model *missing_img = NULL;
    st = mk_image_model_load(dev, "lite0", "/nonexistent/lite0.safetensors", MK_DTYPE_DEFAULT,
                             &missing_img);
    CHECK(st == MK_ERR_IO && missing_img == NULL &&
              strstr(mk_last_error(), "/nonexistent/lite0.safetensors"),
          "missing weights file: %s", mk_last_error());

    /* The two-call string protocol: ask for the size, then fetch. */
    size_t need = 0;
    st = mk_device_describe(dev, NULL, 0, &need);
    CHECK(st == MK_ERR_BUFFER_TOO_SMALL && need > 1, "describe needs %zu bytes", need);
    char *desc = malloc(need);
    st = mk_device_describe(dev, desc, need, NULL);
    CHECK(st == MK_OK && strlen(desc) + 1 == need, "device: %s", desc);
    free(desc);

    /* A model file over the process-wide limit: refused before it is read, naming the limit. */
    mk_set_max_model_file_bytes(100);
    mk_bert *small = NULL;
    st = mk_bert_load(dev, argv[2], MK_DTYPE_DEFAULT, 0, &small);
    CHECK(st == MK_ERR_CORRUPT_INPUT && small == NULL && strstr(mk_last_error(), "limit of 100"),
          "model file over the limit: %s", mk_last_error());
    mk_set_max_model_file_bytes(0);

    /* Sentence embeddings. */
    mk_bert *bert = NULL;
    st = mk_bert_load(dev, argv[2], MK_DTYPE_DEFAULT, 0, &bert);
    CHECK(st == MK_OK, "MiniLM loaded (%s)", mk_last_error());
    if (st != MK_OK) {
        mk_device_free(dev);
        return 1;
    }
    size_t dim = mk_bert_dim(bert);
    CHECK(dim == 384, "embedding width %zu", dim);
    const char *texts[3] = {"The patient has a fever and a cough.",
                            "A feverish patient who is coughing.",
                            "The stock market closed higher on Friday."};
    float *emb = malloc(3 * dim * sizeof(float));
    for (size_t i = 0; i < 3 * dim; i++) emb[i] = NAN;
    st = mk_bert_embed(bert, texts, 3, MK_POOLING_MEAN, 1, emb, 3 * dim - 1);
    CHECK(st == MK_ERR_BUFFER_TOO_SMALL && isnan(emb[0]),
          "short buffer refused, nothing written: %s", mk_last_error());
    st = mk_bert_embed(bert, texts, 3, MK_POOLING_MEAN, 1, emb, 3 * dim);
    CHECK(st == MK_OK, "embedded 3 texts (%s)", mk_last_error());
    double n0 = dot(emb, emb, dim), s01 = dot(emb, emb + dim, dim), s02 = dot(emb, emb + 2 * dim, dim);
    CHECK(fabs(n0 - 1.0) < 1e-4, "unit rows |e0|^2 = %.6f", n0);
    CHECK(s01 > 0.6 && s01 > s02 + 0.3, "similar texts closer: cos %.4f vs %.4f", s01, s02);
    CHECK(mk_bert_num_labels(bert) == 0, "MiniLM has no classification head");
    float logit;
    st = mk_bert_classify(bert, texts, 1, &logit, 1);
    CHECK(st == MK_ERR_INVALID_ARGUMENT && strstr(mk_last_error(), "classification head"),
          "classify without a head: %s", mk_last_error());
    /* The batch limit: 2 texts per call, so 3 are refused (nothing written); 0 restores it. */
    st = mk_bert_set_input_limits(bert, 2, 0);
    CHECK(st == MK_OK, "BERT limits set (%s)", mk_last_error());
    emb[0] = NAN;
    st = mk_bert_embed(bert, texts, 3, MK_POOLING_MEAN, 1, emb, 3 * dim);
    CHECK(st == MK_ERR_INVALID_ARGUMENT && strstr(mk_last_error(), "max_batch") && isnan(emb[0]),
          "3 texts over max_batch 2: %s", mk_last_error());
    st = mk_bert_set_input_limits(bert, 0, 0);
    st = st == MK_OK ? mk_bert_embed(bert, texts, 3, MK_POOLING_MEAN, 1, emb, 3 * dim) : st;
    CHECK(st == MK_OK, "default limits again (%s)", mk_last_error());
    free(emb);
    mk_bert_free(bert);

    /* Image classification with the real EfficientNet-Lite0. */
    mk_image_model *img = NULL;
    st = mk_image_model_load(dev, "lite0", argv[3], MK_DTYPE_DEFAULT, &img);
    CHECK(st == MK_OK, "Lite0 loaded (%s)", mk_last_error());
    if (st != MK_OK) {
        mk_device_free(dev);
        return 1;
    }
    size_t k = mk_image_model_num_outputs(img);
    CHECK(k == 1000, "%zu ImageNet logits", k);
    float *logits = malloc(k * sizeof(float));
    st = mk_image_classify_file(img, argv[4], logits, k);
    CHECK(st == MK_OK, "classified %s (%s)", argv[4], mk_last_error());
    size_t best = 0;
    for (size_t i = 1; i < k; i++)
        if (logits[i] > logits[best]) best = i;
    int right = 0;
    for (int a = 5; a < argc; a++) right |= (size_t)atoi(argv[a]) == best;
    CHECK(right, "top-1 class %zu", best);
    st = mk_image_classify_file(img, "/nonexistent/x.png", logits, k);
    CHECK(st == MK_ERR_IO && strstr(mk_last_error(), "/nonexistent/x.png"), "missing file: %s",
          mk_last_error());
    st = mk_image_model_set_input_limits(img, 0, 0, 0, 0, 1);
    uint8_t px[2 * 4 * 4 * 3] = {0};
    float two[2000];
    two[0] = NAN;
    st = st == MK_OK ? mk_image_classify_u8(img, px, 2, 4, 4, 3, two, 2000) : st;
    CHECK(st == MK_ERR_INVALID_ARGUMENT && strstr(mk_last_error(), "max_batch") && isnan(two[0]),
          "2 images over max_batch 1: %s", mk_last_error());
    free(logits);
    mk_image_model_free(img);

    mk_device_free(dev);
    mk_device_free(NULL); /* accepted */
    printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
