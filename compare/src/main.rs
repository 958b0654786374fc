//! Loads a broker the way `peerlink bench dm` loads PeerLink — `--publishers`
//! connections from one thread, each keeping at most `--window` messages of
//! `--size` bytes waiting for the broker's acknowledgement — and prints the
//! acknowledged messages per second and the acknowledgement latency as one
//! `key=value` line. For NATS, a JetStream publish acknowledged by the
//! server (file storage); for MQTT, a QoS 1 publish acknowledged by PUBACK.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    broker: Broker,
    /// Connections publishing at once.
    #[arg(long, default_value_t = 64, global = true)]
    publishers: usize,
    /// Messages each publisher keeps waiting for an acknowledgement.
    #[arg(long, default_value_t = 64, global = true)]
    window: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 128, global = true)]
    size: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10, global = true)]
    duration: u64,
}

#[derive(Subcommand)]
enum Broker {
    /// NATS JetStream: publishes to a file-storage stream, acknowledged once stored.
    Nats {
        /// The server.
        #[arg(long, default_value = "127.0.0.1:4222")]
        url: String,
        /// Copies of the stream (more than 1 needs a JetStream cluster of
        /// at least that many servers); a publish is acknowledged once a
        /// majority of them store it.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// MQTT (Mosquitto): QoS 1 publishes, acknowledged by PUBACK.
    Mqtt {
        /// The broker's host.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The broker's port.
        #[arg(long, default_value_t = 1883)]
        port: u16,
    },
}

/// What one publisher saw.
struct Tally {
    acked_in_time: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn nats_publisher(url: String, n: usize, args: &Args, end: Instant) -> Result<Tally> {
    let client = async_nats::connect(&url).await.context("cannot connect to NATS")?;
    let js = async_nats::jetstream::new(client);
    let payload = Bytes::from(vec![b'x'; args.size]);
    let subject = format!("bench.{n}");
    let mut tally = Tally {
        acked_in_time: 0,
        latency: histogram(),
    };
    let mut inflight = FuturesUnordered::new();
    loop {
        while Instant::now() < end && inflight.len() < args.window {
            let start = Instant::now();
            let ack = js.publish(subject.clone(), payload.clone()).await?;
            inflight.push(async move { ack.await.map(|_| start) });
        }
        let Some(acked) = inflight.next().await else {
            return Ok(tally);
        };
        let start = acked?;
        let now = Instant::now();
        tally.latency.record(micros(now - start))?;
        if now <= end {
            tally.acked_in_time += 1;
        }
    }
}

async fn mqtt_publisher(host: String, port: u16, n: usize, args: &Args, end: Instant) -> Result<Tally> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let mut options = MqttOptions::new(format!("bench-{n}"), host, port);
    options.set_inflight(u16::try_from(args.window).context("--window is too large")?);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 4 * args.window);
    let payload = vec![b'x'; args.size];
    let topic = format!("bench/{n}");
    let mut tally = Tally {
        acked_in_time: 0,
        latency: histogram(),
    };
    let mut sent: BTreeMap<u16, Instant> = BTreeMap::new();
    let mut queued = 0usize;
    let mut acked = 0usize;
    let mut stopping = false;
    loop {
        // Keep the client's queue topped up while the load runs; the event
        // loop limits what is in flight to the window.
        while !stopping && queued - acked < 2 * args.window {
            if Instant::now() >= end {
                stopping = true;
                break;
            }
            client.try_publish(&topic, QoS::AtLeastOnce, false, payload.clone())?;
            queued += 1;
        }
        if stopping && acked == queued {
            return Ok(tally);
        }
        match events.poll().await.context("MQTT connection failed")? {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                sent.insert(pkid, Instant::now());
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                acked += 1;
                let now = Instant::now();
                if let Some(start) = sent.remove(&ack.pkid) {
                    tally.latency.record(micros(now - start))?;
                }
                if now <= end {
                    tally.acked_in_time += 1;
                }
            }
            _ => {}
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    if let Broker::Nats { url, replicas } = &args.broker {
        // A fresh file-storage stream for the run.
        let js = async_nats::jetstream::new(async_nats::connect(url).await?);
        let _ = js.delete_stream("BENCH").await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: *replicas,
            ..Default::default()
        })
        .await
        .context("cannot create the stream")?;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let publishers = (0..args.publishers).map(|n| async move {
        match &args.broker {
            Broker::Nats { url, .. } => nats_publisher(url.clone(), n, args, end).await,
            Broker::Mqtt { host, port } => mqtt_publisher(host.clone(), *port, n, args, end).await,
        }
    });
    let tallies = futures::future::join_all(publishers).await;
    let mut acked = 0;
    let mut latency = histogram();
    for tally in tallies {
        let tally = tally?;
        acked += tally.acked_in_time;
        latency.add(&tally.latency)?;
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "acked_per_s={:.0} ack_p50_ms={:.3} ack_p99_ms={:.3} acked={acked}",
        acked as f64 / args.duration as f64,
        ms(0.5),
        ms(0.99),
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(&args))
}
