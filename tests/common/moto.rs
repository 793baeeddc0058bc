//! moto's S3 server for tests of S3 sources and uploads.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{free_port, wait_until};

/// moto's S3 server (scripts/setup.sh installs it under target/python).
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn python() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/python")
}

pub fn start_moto() -> Moto {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/python/bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/setup.sh (it installs moto[server] for this test)",
        bin.display()
    );
    let port = free_port().port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "moto_server did not listen"
    );
    Moto { child, endpoint }
}

pub const S3_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

/// Put `bytes` at s3://bucket/key on moto, with boto3 (moto's dependency).
pub fn s3_put(moto: &Moto, bucket: &str, key: &str, bytes: &[u8], dir: &Path) {
    let file = dir.join("upload.bin");
    std::fs::write(&file, bytes).unwrap();
    let script = format!(
        "import boto3\ns3 = boto3.client('s3', endpoint_url='{}')\n\
         try:\n    s3.create_bucket(Bucket='{bucket}')\nexcept Exception:\n    pass\n\
         s3.upload_file('{}', '{bucket}', '{key}')\n",
        moto.endpoint,
        file.display()
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .envs(S3_ENV)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
