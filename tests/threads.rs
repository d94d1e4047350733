//! Thread safety (issue 15): every public model and handle type is Send + Sync (checked at
//! compile time), and 8 threads sharing one model get results bit-identical to a serial run:
//! MiniLM on the CPU backend, a CNN on the CPU backend and on the test device. The C ABI's
//! handles across threads and its per-thread last error: tests/capi.rs.
// This file needs the `tokenizers` feature (MiniLM texts).
#![cfg(feature = "tokenizers")]

mod common;

/// The installed MiniLM folder (its weights present), or None after a counted SKIP with
/// `MEDKERN_SKIP_MODELS=1`.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    common::model_or_skip(test, "all-MiniLM-L6-v2/model.safetensors")
        .and_then(|f| f.parent().map(std::path::Path::to_path_buf))
}

use medkern::capi::{MkBert, MkDevice, MkExam, MkImageModel};
use medkern::input::{InputLimits, RawImage};
use medkern::model::bert::{BertConfig, BertModel, BertTokenizer, Pooling};
use medkern::model::compress::Checkpoint;
use medkern::model::efficientnet::EfficientNet;
use medkern::model::exam::{ExamHead, ExamModel, ResNetTrunk};
use medkern::model::resnet::ResNet;
use medkern::model::sepsis::{Autoencoder, SepsisNet};
use medkern::{DType, Device, DeviceTensor, Gpu, HostTensor, Tensor};
use std::path::PathBuf;

const fn send_sync<T: Send + Sync>() {}

/// Compile-time: a type that stops being Send + Sync breaks the build here.
const _: () = {
    send_sync::<Device>();
    send_sync::<Gpu>();
    send_sync::<Tensor>();
    send_sync::<DeviceTensor>();
    send_sync::<HostTensor>();
    send_sync::<BertConfig>();
    send_sync::<BertModel>();
    send_sync::<BertTokenizer>();
    send_sync::<Checkpoint>();
    send_sync::<EfficientNet>();
    send_sync::<ResNet>();
    send_sync::<SepsisNet>();
    send_sync::<Autoencoder>();
    send_sync::<ExamHead>();
    send_sync::<ResNetTrunk>();
    send_sync::<ExamModel>();
    send_sync::<RawImage>();
    send_sync::<InputLimits>();
    send_sync::<MkDevice>();
    send_sync::<MkBert>();
    send_sync::<MkImageModel>();
    send_sync::<MkExam>();
    send_sync::<medkern::Error>();
};

/// 8 threads share one MiniLM (CPU backend), each embedding the texts in its own order,
/// several times: every embedding is bit-identical to the serial run's.
#[test]
fn eight_threads_share_one_bert_bit_identically() {
    let Some(dir) = minilm_or_skip("threads::eight_threads_share_one_bert_bit_identically") else {
        return;
    };
    let model = BertModel::load(&dir, &Device::Cpu, DType::F32).expect("load");
    let tok = BertTokenizer::load(&dir, 128).expect("tokenizer");
    let texts = [
        "Fever and productive cough for three days.",
        "Chest X-ray: bilateral infiltrates.",
        "SpO2 88% on room air.",
        "No acute distress.",
        "Lactate 4.2 mmol/L, MAP 58 mmHg.",
        "a",
    ];
    let ids = tok.encode(&texts).expect("encode");
    let serial: Vec<Vec<f32>> = ids
        .iter()
        .map(|one| {
            model
                .embed(std::slice::from_ref(one), Pooling::Mean)
                .expect("embed")
                .remove(0)
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (model, ids, serial) = (&model, &ids, &serial);
                s.spawn(move || {
                    for round in 0..2 {
                        for k in 0..ids.len() {
                            let i = (k + t + round) % ids.len();
                            let got = model
                                .embed(std::slice::from_ref(&ids[i]), Pooling::Mean)
                                .expect("embed")
                                .remove(0);
                            let same = got
                                .iter()
                                .zip(&serial[i])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "thread {t}, round {round}, text {i} differs");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
}

/// The bits of a tensor's values (f32, f16 or bf16), for bit-for-bit comparison.
fn bits(t: &Tensor) -> Vec<u64> {
    t.to_host()
        .expect("to host")
        .to_f64()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// 8 threads share one CNN (the sepsis classifier, ResNet-18 layers 1-2, seeded random
/// weights), each running the images in its own order, twice: logits, probabilities and
/// features are bit-identical to a serial run. On the CPU backend always, and on the test
/// device (the emulated GPU under MEDKERN_TEST_DEVICE=emu: its launches from 8 threads
/// interleave on one device under the memory checks) when there is one.
#[test]
fn eight_threads_share_one_cnn_bit_identically() {
    let test = "threads::eight_threads_share_one_cnn_bit_identically";
    let weights = medkern::model::sepsis::random_sepsis(7)
        .to_safetensors()
        .expect("weights");
    let mut devs = vec![(Device::Cpu, DType::F32)];
    devs.extend(common::test_device(test).map(|d| (d, DType::F16)));
    for (dev, dt) in devs {
        let model = SepsisNet::from_safetensors(&weights, &dev, dt).expect("model");
        let mut rng = common::SeedRng::new(15);
        let shape = [1, 40, 36, 3];
        let images: Vec<Tensor> = (0..4)
            .map(|_| {
                let x = common::random_values(&mut rng, shape.iter().product(), 1.0, dt);
                common::upload(&dev, &shape, &x, dt)
            })
            .collect();
        let run = |x: &Tensor| {
            let o = model.forward(x).expect("forward");
            [bits(&o.logits), bits(&o.probs), bits(&o.features)]
        };
        let serial: Vec<_> = images.iter().map(run).collect();
        assert!(
            serial.windows(2).all(|w| w[0][0] != w[1][0]),
            "distinct images give distinct logits"
        );
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let (images, serial, run, dev) = (&images, &serial, &run, &dev);
                    s.spawn(move || {
                        for round in 0..2 {
                            for k in 0..images.len() {
                                let i = (k + t + round) % images.len();
                                assert!(
                                    run(&images[i]) == serial[i],
                                    "{}: thread {t}, round {round}, image {i} differs",
                                    dev.describe()
                                );
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("thread");
            }
        });
    }
}

/// Issue 15 item 13: a device tensor dropped on a thread where its GPU's context is not
/// current is freed in that context (DeviceTensor's Drop binds it), and the GPU keeps working
/// from both threads afterwards.
#[test]
fn device_tensors_dropped_on_other_threads_free_in_their_context() {
    let Some(dev) = common::test_device("threads::device_tensors_dropped_on_other_threads") else {
        return;
    };
    let values: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5 - 7.0).collect();
    for _ in 0..4 {
        let t = Tensor::new(&dev, &[4096], values.clone()).expect("upload");
        std::thread::spawn(move || drop(t))
            .join()
            .expect("drop on another thread");
    }
    let back = std::thread::spawn({
        let dev = dev.clone();
        let values = values.clone();
        move || {
            Tensor::new(&dev, &[4096], values)
                .and_then(|t| t.to_host())
                .expect("a new thread uses the GPU")
        }
    })
    .join()
    .expect("thread");
    let here = Tensor::new(&dev, &[4096], values.clone())
        .and_then(|t| t.to_host())
        .expect("this thread uses the GPU");
    let want: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(back.to_f64(), want);
    assert_eq!(here.to_f64(), want);
}

/// Issue 15 item 13: one kernel (`depthwise_any_f32`) launched from 6 threads at once with 5
/// dynamic shared-memory sizes, from 4.2 KiB to 76.6 KiB (two of them above the 48 KiB that
/// needs the opt-in; the dilations' plans, checked in `ops::depthwise`'s unit tests), every
/// launch succeeds and is bit-identical to the serial run. When each launch set the opt-in
/// attribute to its own size, a thread could lower it between another's setting and launch.
#[test]
fn one_kernel_launched_with_several_dynamic_shared_sizes_from_threads() {
    use medkern::ops::{self, depthwise::Depthwise};
    let Some(dev) =
        common::test_device("threads::one_kernel_launched_with_several_dynamic_shared_sizes")
    else {
        return;
    };
    let mut rng = common::SeedRng::new(13);
    let (k, c) = (7, 8);
    let w = common::upload(
        &dev,
        &[k, k, c],
        &common::random_values(&mut rng, k * k * c, 1.0, DType::F32),
        DType::F32,
    );
    let cases: Vec<(usize, Tensor)> = [1, 4, 6, 7, 8]
        .iter()
        .map(|&d| {
            let hw = (k - 1) * d + 3;
            let x = common::random_values(&mut rng, hw * hw * c, 1.0, DType::F32);
            (d, common::upload(&dev, &[1, hw, hw, c], &x, DType::F32))
        })
        .collect();
    let run = |(d, x): &(usize, Tensor)| {
        let opts = Depthwise {
            dilation: (*d, *d),
            ..Depthwise::default()
        };
        bits(&ops::depthwise(x, &w, &opts).expect("depthwise"))
    };
    let serial: Vec<_> = cases.iter().map(run).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let (cases, serial, run) = (&cases, &serial, &run);
                s.spawn(move || {
                    for round in 0..4 {
                        for j in 0..cases.len() {
                            let i = (j + t + round) % cases.len();
                            assert!(
                                run(&cases[i]) == serial[i],
                                "thread {t}, round {round}, dilation {} differs",
                                cases[i].0
                            );
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
}
