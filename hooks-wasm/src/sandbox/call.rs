//! One call of a module: its WASI context (arguments, stdin, stdout and stderr through
//! capped pipes, the `/state` preopen and its quota, a bounded handle table, a
//! `random_get` that yields), its store with the limits, and its outcome.

use super::limits::{bounded, classify, Ended, MemoryCap};
use super::*;

/// Per-store state: the WASI context, the memory cap and the deadline.
pub(crate) struct HostState {
    pub(crate) wasi: WasiP1Ctx,
    limits: MemoryCap,
    deadline: Option<Instant>,
    pub(crate) state: Option<StateQuota>,
}

/// Most entries in a call's WASI resource table: the stdio streams, and one pollable
/// per `poll_oneoff` subscription while it waits. A poll with more subscriptions traps
/// when the table is full, after ~4 000 of them, instead of making the host build
/// 500 000 (3.5 s and 194 MiB of host heap in a debug build, for one call).
const MAX_WASI_HANDLES: usize = 4096;

/// Most bytes `random_get` fills at a time; it yields between steps, so the timeout
/// can end a call for a huge buffer (one 65 MB call took 24 s in a debug build, and
/// the host built all of it in its own memory first).
const RANDOM_STEP: usize = 64 << 10;

impl Sandbox {
    /// Runs a module once, on this thread, until it ends, its timeout passes (in wasm
    /// code or in a host call), or `cancel`'s sender is dropped. Must not be called on
    /// an async worker thread.
    pub(crate) fn run(
        &self,
        module: &CompiledModule,
        (argv, env): (&[String; 5], &[(String, String)]),
        input: Option<Arc<[u8]>>,
        (state, state_ends): (Option<&Path>, bool),
        limits: CallLimits,
        cancel: Option<oneshot::Receiver<()>>,
    ) -> HookOutcome {
        let start = Instant::now();
        let deadline = limits.timeout.and_then(|t| start.checked_add(t));
        let stdout = CappedPipe::new(limits.max_output);
        let stderr = CappedPipe::new(limits.max_output);
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(argv)
            .env("LC_ALL", "C")
            .envs(env)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // Blocking the thread would turn a WASI sleep into `thread::sleep`, which
            // no timeout can end.
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(input) = input {
            wasi.stdin(MemoryInputPipe::new(bytes::Bytes::from_owner(input)));
        }
        // Its only writable path, and only for hooks that keep state.
        if let Some(dir) = state {
            if let Err(e) = wasi.preopened_dir(dir, "/state", FsPerms::ReadWrite) {
                let why = format!("cannot open its state directory `{}`: {e:#}", dir.display());
                return HookOutcome::new(HookStatus::Crashed(why)).with_duration(start.elapsed());
            }
        }
        let quota = match state
            .map(|dir| StateQuota::new(dir, limits.state_max, deadline))
            .transpose()
        {
            Ok(quota) => quota,
            Err(why) => return HookOutcome::new(HookStatus::Crashed(why)).with_duration(start.elapsed()),
        };
        let mut wasi = wasi.build_p1();
        wasi.ctx().table.set_max_capacity(MAX_WASI_HANDLES);
        let watched = deadline.is_some() || cancel.is_some();
        let state = HostState {
            wasi,
            limits: MemoryCap::new(limits.memory),
            deadline,
            state: quota,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if self.config.fuel {
            let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        }
        // Each tick, a computing module traps once past its deadline, and otherwise
        // yields, so the caller's cancellation is seen while it computes too.
        let _ticking = if self.config.interruptible && watched {
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(|s| {
                Ok(match s.data().deadline {
                    Some(d) if Instant::now() >= d => UpdateDeadline::Interrupt,
                    _ => UpdateDeadline::Yield(1),
                })
            });
            Some(Ticker::global().start())
        } else {
            store.set_epoch_deadline(u64::MAX);
            None
        };
        let pre = &module.pre;
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let entry = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            entry.call_async(&mut store, ()).await
        };
        let status = match runtime::block_on(bounded(call, deadline, cancel)) {
            Ok(Ended::Returned(Ok(()))) => HookStatus::Exited(0),
            Ok(Ended::Returned(Err(e))) => classify(&e, store.data().limits.refused, limits),
            Ok(Ended::TimedOut) => HookStatus::TimedOut(limits.timeout.unwrap_or_default()),
            Ok(Ended::Abandoned) => HookStatus::Failed(virt_hooks_core::HookError::Cancelled),
            Err(e) => HookStatus::Crashed(e.to_owned()),
        };
        // Whatever the module did last is measured too: a cap that held only while it
        // ran would be no cap.
        // At the object's last event the directory goes anyway: one overshoot then must
        // not fail the event, which would keep the directory and fail every later call.
        let over = store
            .data()
            .state
            .as_ref()
            .filter(|_| !state_ends)
            .and_then(StateQuota::over);
        let status = match (status, over) {
            (HookStatus::Exited(_), Some(why)) => HookStatus::Crashed(why),
            (status, _) => status,
        };
        // The module saw `dquot` and may have carried on: the operator sees why.
        let refused = store.data().state.as_ref().and_then(|q| q.refused().map(str::to_owned));
        drop(store);
        let (out, out_cut) = stdout.take();
        let (err, err_cut) = stderr.take();
        let mut outcome = HookOutcome::new(status)
            .with_stdout(out)
            .with_stderr(err)
            .with_duration(start.elapsed());
        outcome.stdout_truncated = out_cut;
        outcome.stderr_truncated = err_cut;
        outcome.warnings.extend(refused);
        outcome
    }
}

/// WASI's `random_get(buf, len)`, from the same generator, filled [`RANDOM_STEP`] bytes
/// at a time straight into the module's memory, with a yield between steps (WASI's
/// own builds the whole buffer on the host in one go, which no timeout can stop).
pub(super) fn random_get(
    mut caller: Caller<'_, HostState>,
    (buf, len): (i32, i32),
) -> Box<dyn Future<Output = wasmtime::Result<i32>> + Send + '_> {
    Box::new(async move {
        let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
            wasmtime::bail!("random_get: the module exports no memory");
        };
        // WASI pointers and lengths are unsigned; an out-of-bounds buffer traps, as in
        // WASI's own.
        let (start, len) = (buf as u32 as usize, len as u32 as usize);
        let end = start
            .checked_add(len)
            .filter(|&end| end <= memory.data_size(&caller))
            .ok_or_else(|| wasmtime::format_err!("random_get: buffer {start}+{len} is out of bounds"))?;
        let mut at = start;
        while at < end {
            let step = (end - at).min(RANDOM_STEP);
            let bytes = caller
                .data_mut()
                .wasi
                .ctx()
                .ctx
                .random()
                .get_random_bytes(step as u64)?;
            memory.write(&mut caller, at, &bytes)?;
            at += step;
            if at < end {
                yield_once().await;
            }
        }
        Ok(0) // errno `success`
    })
}

/// Pending once (and woken at once), so the future driving the call polls its
/// deadline and cancellation before the module's host call goes on.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}
