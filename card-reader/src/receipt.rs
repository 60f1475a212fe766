//! The receipt as the terminal prints it: number, amount, provider, item, time, and the signed
//! `SLR1|…` payload as a QR code in Unicode half blocks (two modules per character row), so
//! the elder or an inspector can scan it off the screen.

use crate::api::Receipt;
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// The receipt text, QR code included, ending in a newline.
pub fn render(receipt: &Receipt) -> String {
    let mut text = format!(
        "==== 居家养老服务结算单 / Home-care service receipt ====\n\
         单号 Receipt no : {no}\n\
         金额 Amount     : {amount} 元 (yuan)\n\
         服务商 Provider : {provider}\n\
         项目 Item       : {item}\n\
         时间 Time       : {at}\n\
         订单 Order      : {order}\n\
         收费 Charge     : {charge}\n",
        no = receipt.no,
        amount = receipt.amount,
        provider = receipt.provider_id,
        item = receipt.item_code,
        at = receipt.confirmed_at,
        order = receipt.order_id,
        charge = receipt.charge_id,
    );
    match qr_text(&receipt.qr) {
        Some(qr) => text.push_str(&qr),
        None => text.push_str("(二维码无法生成 / the QR code could not be drawn)\n"),
    }
    text.push_str(&format!("QR: {}\n", receipt.qr));
    text
}

/// The payload as a QR code, light on dark as terminals show best, with its quiet zone.
pub fn qr_text(payload: &str) -> Option<String> {
    let code = QrCode::new(payload.as_bytes()).ok()?;
    let mut art = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    art.push('\n');
    Some(art)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_fields_and_a_qr_code() {
        let receipt = Receipt {
            no: "R2026-00000001".into(),
            charge_id: "C00000001".into(),
            order_id: "O00000001".into(),
            provider_id: "P001".into(),
            item_code: "DC001".into(),
            amount: "50.00".into(),
            confirmed_at: "2026-03-02T00:00:00Z".into(),
            qr: "SLR1|R2026-00000001|50.00|P001|2026-03-02T00:00:00Z|ab|sig".into(),
        };
        let text = render(&receipt);
        for part in [
            "R2026-00000001",
            "50.00 元",
            "P001",
            "2026-03-02T00:00:00Z",
            "QR: SLR1|",
        ] {
            assert!(text.contains(part), "{part} in\n{text}");
        }
        let qr = qr_text(&receipt.qr).unwrap();
        assert!(qr.lines().count() > 10, "{qr}");
        assert!(qr.contains('▀') || qr.contains('▄'), "{qr}");
    }
}
