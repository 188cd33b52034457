//! TLS and mutual TLS, with certificates made by the test.

mod support;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use support::*;
use tollgate::server::{Options, Tls};
use tollgate::storage::memory::MemoryStore;

const CONFIG: &str = "plans: { free: { limits: [ { rate: 5/minute } ] } }\n";

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let leaf = |name: &str| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("client"),
    }
}

async fn serve(pki: &Pki, mtls: bool) -> TestServer {
    let options = Options {
        tls: Some(Tls {
            cert: pki.server.0.clone().into_bytes(),
            key: pki.server.1.clone().into_bytes(),
            client_ca: mtls.then(|| pki.ca.clone().into_bytes()),
        }),
        ..Default::default()
    };
    TestServer::start_opts_tls(CONFIG, MemoryStore::new(1_000), options).await
}

async fn tls_client(
    s: &TestServer,
    pki: &Pki,
    with_cert: bool,
) -> Result<RateLimiterClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", s.addr.port()))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(RateLimiterClient::new(channel))
}

#[tokio::test]
async fn a_tls_client_connects_and_a_plaintext_one_is_refused() {
    let pki = pki();
    let s = serve(&pki, false).await;
    let mut client = tls_client(&s, &pki, false).await.expect("tls connects");
    let d = client
        .consume(req("k", "/x"))
        .await
        .expect("consume")
        .into_inner();
    assert_eq!(verdict(&d), Verdict::Allowed);
    // A plaintext client is told what is wrong, not left to time out.
    let refused = RateLimiterClient::connect(format!("http://{}", s.addr))
        .await
        .expect("the TCP connection and HTTP/2 handshake are answered")
        .consume(req("k", "/x"))
        .await
        .expect_err("plaintext was served");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("connect with TLS"),
        "{}",
        refused.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn with_mtls_a_client_without_a_certificate_is_refused() {
    let pki = pki();
    let s = serve(&pki, true).await;
    let refused = async {
        tls_client(&s, &pki, false)
            .await
            .ok()?
            .consume(req("k", "/x"))
            .await
            .ok()
    };
    assert!(
        refused.await.is_none(),
        "a client without a certificate was served"
    );
    let mut client = tls_client(&s, &pki, true).await.expect("mtls connects");
    assert_eq!(
        verdict(
            &client
                .consume(req("k", "/x"))
                .await
                .expect("consume")
                .into_inner()
        ),
        Verdict::Allowed
    );
    s.stop().await;
}
