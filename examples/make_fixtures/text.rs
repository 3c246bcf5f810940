//! The evaluation text: a short English story written for modelgate (by its authors, for this
//! repository, released under the project's Apache-2.0 licence), kept here as the one source of
//! `fixtures/text/eval.txt`.
//!
//! It trains the fixtures' byte-level BPE merges (see `tokenizer.rs`) and is the prompt text for
//! later parity runs. It holds prose, dialogue, numbers, a list, contractions and a few non-ASCII
//! characters (`−`, `°`, `—`, `é`, `£`) so that tokenizer round trips exercise multi-byte input.

use std::path::Path;

/// The evaluation text, byte for byte as written to `text/eval.txt`.
pub const EVAL_TEXT: &str = r##"The Keeper of Harrow Point

The lighthouse at Harrow Point stood on a shelf of black rock, forty-two metres above the water at high tide. Nobody remembered who had built it. The oldest record in the keeper's cupboard was a ledger from 1871, and even that began in the middle of a sentence, as if an earlier book had been lost or burned. Marta Ellery had kept the light for eleven years, and she liked to say that she had read the ledger so many times that she could recite the weather of any week you named.

"Try me," she said to the boy who had come with the supply boat. "Pick a year."

"Nineteen hundred and four," said the boy.

"March or November?"

"November."

"Wind from the north-east, force seven, rain on the sixth and the ninth, fog on the twelfth. The relief boat was three days late and the keeper, a man called Abel Fenn, wrote that he had eaten the last of the onions." She smiled. "He did not like onions. He wrote that too."

The boy laughed, but he did not quite believe her, so that evening she took the ledger down and showed him the page. There it was, in brown ink gone pale at the edges: wind NE 7, rain, rain, fog, and at the bottom, in a smaller hand, "Last of the onions. Thank God."

*

The work of a lighthouse is mostly the work of small things done at the right time. The lamp has to be lit half an hour before sunset and put out half an hour after sunrise. The lens has to be cleaned every morning, because salt settles on the glass like frost, and a dirty lens can lose a third of its light. The clockwork that turns the lens has to be wound every four hours, day and night, in winter and in summer. The fog signal has to be tested on the first Monday of each month. The log has to be kept.

Marta kept the log in a plain hand. She wrote the time, the wind, the sea, the visibility and the barometer, and then, if anything had happened, she wrote what had happened, in as few words as she could. Ship passing west, 14:20. Gannets diving off the reef. Rain gauge cracked; replaced. She did not write about herself. The log was not a diary. It was a record for whoever came after.

Still, there were days when the log could not hold everything. On those days she wrote letters, and most of the letters she never sent.

*

Dear Tomas,

You asked what I do all day. I think you imagine that I sit at the window and stare at the sea, waiting for a storm, like a painting of a lighthouse keeper. The truth is less romantic. Today I mended the gutter on the north side of the cottage, which had come away in the gale on Tuesday; I counted the paraffin drums (thirty-one full, four empty); I washed two shirts and a blanket; I cooked a pot of lentils that will last until Saturday; and I spent an hour on the gallery with a rag and a bottle of methylated spirit, cleaning the outside of the lantern glass. The gulls had been at it again.

I also read three chapters of the book you sent. I'm enjoying it, although I don't think the author has ever been to sea. Nobody in it is ever wet.

The weather is turning. The glass has fallen 11 millibars since noon, and the swell is coming in long and slow from the south-west, which usually means wind within a day. I have tied everything down that can be tied down. If you don't hear from me next week, it's only because the boat couldn't land.

With love,
M.

*

The storm arrived on the Thursday, a little before midnight. It began as a change in the sound of the sea: the steady hush of the waves on the reef became a deeper, irregular thud, like furniture being moved in a room below. Then the wind came, and with it the rain, driven sideways so hard that it rang against the lantern glass like gravel.

Marta was on watch. She wound the clockwork at midnight and again at four, and between those times she sat in the watch room with a mug of tea going cold beside her and listened. A lighthouse in a storm is never silent. The tower hums. The windows creak in their frames. Somewhere above, a loose ventilator cap rattles, and you tell yourself that you will fix it in the morning, and you know that you will forget.

At 02:40 she saw a light to the south, low on the water, where no light should be. She watched it for a full minute to be sure. It rose and fell and rose again: a small vessel, rolling badly, much closer to the reef than any sensible skipper would go on such a night.

She went down the stairs two at a time and rang the coastguard on the telephone in the kitchen. The line crackled, faded, and came back.

"Harrow Point," she said. "Vessel in difficulty, bearing one-eight-zero, about a mile and a half. Small, maybe ten or twelve metres. I can see a masthead light and nothing else. She's setting towards the reef."

"Understood, Harrow Point. The lifeboat is launching now. Can you keep her in sight?"

"I'll try."

She climbed back up to the gallery and stood in the lee of the lantern with the binoculars, the rain running down her sleeves and into her boots. The little light came and went. Once it vanished for so long that she was sure it had gone for good, and she found that she was holding her breath. Then it appeared again, further east, clear of the worst of the broken water.

The lifeboat reached it at 03:25. Marta watched the two lights come together and then, slowly, move away towards the harbour. At 04:00 she wound the clockwork. At 04:10 she wrote in the log: Vessel in difficulty to S, 02:40. Coastguard informed. Lifeboat on scene 03:25; vessel taken in tow. Wind SW 9, veering W. Heavy rain. Then she went down and made a fresh pot of tea, because the first one had gone quite cold.

*

Some facts about lighthouses, as Marta explained them to visitors in summer, when the boat brought day-trippers out from the mainland:

1. The light at Harrow Point flashes white twice every fifteen seconds. Every lighthouse on the coast has its own pattern, called its character, so that a navigator who sees a light at night can tell which one it is.
2. The lens is a Fresnel lens: not one thick piece of glass, but many rings of prisms arranged around the lamp. It weighs about two and a half tonnes and floats on a bath of mercury, so that a clock spring can turn it.
3. In clear weather the light can be seen from 22 nautical miles away. That is about 41 kilometres, or a little over 25 ordinary miles.
4. The fog signal uses compressed air. It sounds four times every sixty seconds and can be heard, on a still day, across the whole bay.
5. The tower has 117 steps. Marta counts them every time, and every time it is 117, but she counts them anyway.
6. The lowest temperature in the ledger is −14 °C, on 19 January 1963. The highest is 29 °C — in 1976, the summer the cistern ran dry and the keeper's café chairs were used for firewood in the autumn.

Visitors always asked the same questions. Did she get lonely? Was it haunted? What did she do if she got ill? She had answers ready for all of them. No more than anyone else. Only by gulls. Get better, or radio for the boat. What they never asked, and what she would have liked to tell them, was how beautiful the place was at five o'clock on a summer morning, with the sea flat as a plate and the light still turning, pale and unnecessary, against a sky the colour of milk.

*

Dear Tomas,

The boat came today with your parcel: coffee, two candles, a new pair of gloves (thank you; the old ones were more hole than glove), and the newspaper cuttings. The coffee — which cost you £4.20, I saw the label — is already half gone. I have read the one about the automatic lights three times. You're right that it will happen here eventually. The engineers have been talking about it for years. A light that runs itself needs no keeper, and a keeper costs money: wages, food, fuel, the boat every fortnight.

I'm not sure how I feel. Part of me is glad that nobody will have to sit up through nights like last Thursday. Part of me thinks that a machine would not have seen that little boat, or would have seen it and done nothing. A lamp can be made to turn without a person. It is harder to make it care.

But perhaps that is only what every keeper has said, since 1871 or before. Abel Fenn probably said it about the clockwork.

I've started a new ledger. The old one is full.

With love, as always,
M.

*

On the last page of the old ledger, beneath the final entry, Marta added a line she had been thinking about for a long time. It was not a record of the weather, and it was not really for whoever came after. It was closer to the kind of thing a person writes on the wall of a house before they leave it.

"Eleven years, four thousand and some nights. The light was never out."

Then she closed the book, put it on the shelf beside the others, and climbed the 117 steps to wind the clock.
"##;

/// Write `eval.txt` into `dir` (the fixture tree's `text/` folder).
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("eval.txt"), EVAL_TEXT)
}
