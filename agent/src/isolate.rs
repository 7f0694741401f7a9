//! Finding the request that failed a batch. A request with a valid shape can still
//! fail inside the model (an embedding index out of range), and it fails the whole
//! batch it joined; the engine's words quote its data. So a failed batch is run again
//! in halves until every request has its outputs or an error from a run that held
//! only its own data. Pure: the caller supplies the run.
//!
//! One culprit among n requests costs about 2·log2(n) extra runs; n culprits cost
//! 2n − 1 runs in all, the same order as running each alone.

/// How a failed run bears on the items in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Perhaps one item's data: the halves run again apart.
    Split,
    /// Nobody's data, and the words quote none: every item of the run gets the error.
    Shared,
    /// The engine can run nothing more: every item still unanswered gets the error,
    /// and nothing runs again.
    Fatal,
}

/// Runs `items` as one batch; where a run of several fails with an error `blame`
/// calls [`Blame::Split`], runs each half again (recursively), so that such an error
/// reaches an item only from a run of that item alone. Returns one result per item,
/// in order. `run` answers one output per item of the slice it is given.
pub fn isolate<T, O, E: Clone>(
    items: &[T],
    mut run: impl FnMut(&[T]) -> Result<Vec<O>, E>,
    blame: impl Fn(&E) -> Blame,
) -> Vec<Result<O, E>> {
    let mut fatal = None;
    let mut results = Vec::with_capacity(items.len());
    isolate_in(items, &mut run, &blame, &mut fatal, &mut results);
    results
}

fn isolate_in<T, O, E: Clone>(
    items: &[T],
    run: &mut impl FnMut(&[T]) -> Result<Vec<O>, E>,
    blame: &impl Fn(&E) -> Blame,
    fatal: &mut Option<E>,
    results: &mut Vec<Result<O, E>>,
) {
    let everyone = |results: &mut Vec<Result<O, E>>, e: &E| {
        results.extend(items.iter().map(|_| Err(e.clone())));
    };
    if let Some(e) = fatal {
        return everyone(results, e);
    }
    let e = match run(items) {
        Ok(outputs) => return results.extend(outputs.into_iter().map(Ok)),
        Err(e) => e,
    };
    match blame(&e) {
        Blame::Split if items.len() > 1 => {
            let (first, second) = items.split_at(items.len() / 2);
            isolate_in(first, run, blame, fatal, results);
            isolate_in(second, run, blame, fatal, results);
        }
        Blame::Split | Blame::Shared => everyone(results, &e),
        Blame::Fatal => {
            everyone(results, &e);
            *fatal = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{concat, split};
    use crate::error::BatchError;
    use crate::fake::{f32_values, fake_pid, input, FakeLoader};
    use crate::session::SessionError;
    use herd_core::tensor::Tensor;

    /// Runs one-row requests of the given values on a fake session, as the runner does.
    fn run_all(fake: &FakeLoader, values: &[f32]) -> Vec<Result<Vec<Tensor>, BatchError>> {
        let mut session = fake.session();
        let requests: Vec<Vec<Tensor>> = values.iter().map(|&v| vec![input(1, v)]).collect();
        isolate(
            &requests,
            |part| {
                let inputs: Vec<&[Tensor]> = part.iter().map(Vec::as_slice).collect();
                let outputs = session.run(concat(&inputs))?;
                Ok(split(outputs, &vec![1; part.len()])?)
            },
            BatchError::blame,
        )
    }

    #[test]
    fn a_batch_that_runs_runs_once() {
        let fake = FakeLoader::new();
        fake.refuse_negative_values();
        let results = run_all(&fake, &[1.0, 2.0, 3.0]);
        for (r, v) in results.iter().zip([1.0, 2.0, 3.0]) {
            let out = r.as_ref().expect("runs");
            assert_eq!(f32_values(&out[0]), vec![v * 2.0; 4]);
        }
        assert_eq!(fake.batches(), vec![3]);
    }

    #[test]
    fn one_poisoned_request_fails_alone_and_the_rest_get_their_outputs() {
        let fake = FakeLoader::new();
        fake.refuse_negative_values();
        let values = [0.0, 1.0, 2.0, 3.0, 4.0, -5.0, 6.0, 7.0];
        let results = run_all(&fake, &values);
        for (r, v) in results.iter().zip(values) {
            match r {
                Ok(out) => assert_eq!(f32_values(&out[0]), vec![v * 2.0; 4]),
                Err(e) => {
                    assert_eq!(v, -5.0, "only the poisoned one fails");
                    assert_eq!(e.to_string(), "value -5 is out of range");
                }
            }
        }
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(
            fake.batches(),
            vec![8, 4, 4, 2, 1, 1, 2],
            "halves run apart down to the culprit"
        );
    }

    #[test]
    fn each_of_several_culprits_hears_only_of_its_own_value() {
        let fake = FakeLoader::new();
        fake.refuse_negative_values();
        let values = [-1.0, 2.0, -3.0, -4.0, 5.0];
        let results = run_all(&fake, &values);
        for (r, v) in results.iter().zip(values) {
            match r {
                Ok(out) => assert_eq!(f32_values(&out[0]), vec![v * 2.0; 4]),
                Err(e) => assert_eq!(e.to_string(), format!("value {v} is out of range")),
            }
        }
        let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
        assert_eq!(failed, vec![true, false, true, true, false]);
    }

    #[test]
    fn a_session_that_dies_answers_everyone_unanswered_and_runs_nothing_more() {
        let fake = FakeLoader::new();
        fake.refuse_negative_values();
        let mut session = fake.session();
        let requests: Vec<Vec<Tensor>> = [1.0, -2.0, 3.0, 4.0]
            .iter()
            .map(|&v| vec![input(1, v)])
            .collect();
        let mut runs = 0;
        let results = isolate(
            &requests,
            |part| {
                runs += 1;
                if runs == 2 {
                    fake.die_on_next_run();
                }
                let inputs: Vec<&[Tensor]> = part.iter().map(Vec::as_slice).collect();
                let outputs = session.run(concat(&inputs))?;
                Ok(split(outputs, &vec![1; part.len()])?)
            },
            BatchError::blame,
        );
        assert_eq!(fake.batches(), vec![4, 2], "nothing ran after the death");
        for r in results {
            let e = r.expect_err("the worker died under them");
            assert!(
                matches!(e, BatchError::Session(SessionError::WorkerDied { .. })),
                "{e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "the model worker (pid {}) died: killed by the test",
                    fake_pid()
                ),
                "a death's words carry nobody's data"
            );
        }
    }

    #[test]
    fn a_shared_error_goes_to_every_item_of_its_run_without_splitting() {
        let mut runs = Vec::new();
        let results = isolate(
            &[1, 2, 3],
            |part: &[i32]| -> Result<Vec<i32>, &str> {
                runs.push(part.len());
                Err("unreadable reply")
            },
            |_| Blame::Shared,
        );
        assert_eq!(runs, vec![3]);
        assert_eq!(results, vec![Err("unreadable reply"); 3]);
    }

    #[test]
    fn a_split_error_of_a_lone_item_is_its_own() {
        let results = isolate(
            &[7],
            |_: &[i32]| -> Result<Vec<i32>, &str> { Err("seven is refused") },
            |_| Blame::Split,
        );
        assert_eq!(results, vec![Err("seven is refused")]);
    }
}
