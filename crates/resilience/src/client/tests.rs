//! The client's own timers and its TLS rule, with instances that never
//! answer and paused time.

use std::time::Duration;

use futures::StreamExt as _;
use registry_client::Instance;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::*;

fn upsert(id: &str, address: &str) -> WatchUpdate {
    WatchUpdate::Upsert(Instance {
        id: id.to_owned(),
        address: address.to_owned(),
        metadata: Default::default(),
        ttl: Duration::from_secs(10),
    })
}

/// Two instances that never answer, and a method that ignores the
/// channel (so only the stack's own timers can end a call).
/// How a call to them fails, and how long that took.
async fn fail_against_hanging_instances(policy: Policy) -> (CallError, Duration) {
    let updates = futures::stream::iter([
        upsert("a", "http://127.0.0.1:1"),
        upsert("b", "http://127.0.0.1:2"),
        WatchUpdate::Synced(1),
    ])
    .chain(futures::stream::pending());
    let client = Client::<(), ()>::builder("ratings", policy)
        .build(updates, |_, _| futures::future::pending())
        .expect("a valid policy");
    client.synced().await;
    let started = Instant::now();
    let error = client.oneshot(()).await.expect_err("nobody answers");
    (error, started.elapsed())
}

/// How a call against instances that never answer ends, and when, by
/// policy: each attempt ends at its own timeout, the call at its deadline.
#[tokio::test(start_paused = true)]
async fn calls_to_hanging_instances_end_at_the_attempt_timeouts_or_the_deadline() {
    let ms = Duration::from_millis;
    let cases = [
        // The first attempt times out at 100 ms, the retry runs into the
        // deadline at 150 ms, before its own timeout (200 ms).
        (
            "a retry that would outlive the deadline",
            ms(150),
            1,
            ms(150),
        ),
        ("a lone attempt", ms(1000), 0, ms(100)),
        // Both attempts time out, one after the other, on both instances.
        ("a retry within the deadline", ms(1000), 1, ms(200)),
    ];
    for (case, deadline, retries, ends_at) in cases {
        let policy = Policy {
            timeout: ms(100),
            deadline,
            retries,
            ..Policy::default()
        };
        let (error, took) = fail_against_hanging_instances(policy).await;
        let expected = if ends_at == deadline {
            matches!(error, CallError::DeadlineExceeded(d) if d == deadline)
        } else {
            matches!(error, CallError::Timeout(t) if t == policy.timeout)
        };
        assert!(expected, "{case}: {error:?}");
        assert_eq!(took, ends_at, "{case}");
    }
}

#[tokio::test]
async fn tls_clients_call_only_https_instances_and_plaintext_clients_only_http() {
    for (tls, only) in [(None, "plain"), (Some(ClientTlsConfig::new()), "secure")] {
        let updates = futures::stream::iter([
            upsert("plain", "http://127.0.0.1:1"),
            upsert("secure", "https://127.0.0.1:2"),
            WatchUpdate::Synced(1),
        ])
        .chain(futures::stream::pending());
        let client = Client::<(), ()>::builder("ratings", Policy::default())
            .tls(tls)
            .build(updates, |_, _| async {
                Err(tonic::Status::unavailable("never called"))
            })
            .expect("a valid policy");
        client.synced().await;
        let known: Vec<String> = client
            .endpoints()
            .into_iter()
            .map(|endpoint| endpoint.instance)
            .collect();
        assert_eq!(known, [only]);
    }
}

/// A method's answer that counts how often it is polled, and comes when
/// `answer` fires.
struct Counted {
    polls: Arc<std::sync::atomic::AtomicUsize>,
    answer: tokio::sync::oneshot::Receiver<()>,
}

impl Future for Counted {
    type Output = Result<tonic::Response<()>, tonic::Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|_| Ok(tonic::Response::new(())))
    }
}

/// `join_all` polls every future it holds when any one of them wakes: a
/// call polled so, without having asked to be, returns at once and does
/// not poll the stack (nor enter its span); once its answer wakes it, it is
/// polled through and answers.
#[tokio::test]
async fn a_call_polled_without_a_wake_does_not_poll_the_stack() {
    let updates =
        futures::stream::iter([upsert("a", "http://127.0.0.1:1"), WatchUpdate::Synced(1)])
            .chain(futures::stream::pending());
    let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (answer, answered) = tokio::sync::oneshot::channel();
    let answered = Arc::new(std::sync::Mutex::new(Some(answered)));
    let counted = polls.clone();
    let client = Client::<(), ()>::builder("ratings", Policy::default())
        .build(updates, move |_, _| Counted {
            polls: counted.clone(),
            answer: answered.lock().unwrap().take().expect("one call"),
        })
        .expect("a valid policy");
    client.synced().await;
    let mut client = client;
    let call = client.ready().await.expect("ready").call(());
    let mut call = std::pin::pin!(call);

    assert!(futures::poll!(call.as_mut()).is_pending());
    let sent = polls.load(Ordering::SeqCst);
    assert_eq!(sent, 1, "the first poll reaches the method");
    for _ in 0..10 {
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    assert_eq!(
        polls.load(Ordering::SeqCst),
        sent,
        "polls without a wake stop at the call"
    );

    answer.send(()).expect("the call waits");
    call.await.expect("answered");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        sent + 1,
        "woken, it is polled through"
    );
}
